// Command isthmus-agent is the node agent; see agent/agentcmd.
package main

import (
	"os"

	"github.com/isthmus-mesh/isthmus/agent/agentcmd"
)

func main() { os.Exit(agentcmd.Main()) }
