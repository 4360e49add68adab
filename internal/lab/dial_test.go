package lab_test

import (
	"net"
	"net/netip"
	"strconv"
	"time"
)

func dialTCP(ip netip.Addr, port int, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), strconv.Itoa(port)), timeout)
	if err == nil {
		c.Close()
	}
	return err
}
