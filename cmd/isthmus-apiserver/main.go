// Command isthmus-apiserver is the mesh apiserver; see package apiserver.
package main

import (
	"os"

	"github.com/isthmus-mesh/isthmus/apiserver"
)

func main() { os.Exit(apiserver.Main()) }
