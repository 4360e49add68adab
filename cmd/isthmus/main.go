// Command isthmus is the mesh's command line; see internal/cli.
package main

import (
	"os"

	"github.com/isthmus-mesh/isthmus/internal/cli"
)

func main() { os.Exit(cli.Main()) }
