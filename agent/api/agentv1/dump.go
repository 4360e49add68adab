package agentv1

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"
)

// DumpAllIPCache reads an agent's whole ipcache dump: every chunk of the
// DumpIPCache stream, in order.
func DumpAllIPCache(ctx context.Context, client AgentClient) ([]*IPCacheEntry, error) {
	stream, err := client.DumpIPCache(ctx, &DumpIPCacheRequest{})
	if err != nil {
		return nil, err
	}
	var all []*IPCacheEntry
	err = receiveAll(stream, func(c *IPCacheChunk) { all = append(all, c.Entries...) })
	return all, err
}

// DumpAllIdentities reads an agent's whole identity dump: every chunk of
// the DumpIdentities stream, in order.
func DumpAllIdentities(ctx context.Context, client AgentClient) ([]*Identity, error) {
	stream, err := client.DumpIdentities(ctx, &DumpIdentitiesRequest{})
	if err != nil {
		return nil, err
	}
	var all []*Identity
	err = receiveAll(stream, func(c *IdentityChunk) { all = append(all, c.Identities...) })
	return all, err
}

// receiveAll hands each message of a server stream to add until the stream
// ends.
func receiveAll[T any](stream grpc.ServerStreamingClient[T], add func(*T)) error {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		add(msg)
	}
}
