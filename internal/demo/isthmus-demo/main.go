// Command isthmus-demo is `make demo`: see package demo.
package main

import (
	"os"

	"github.com/isthmus-mesh/isthmus/internal/demo"
)

func main() { os.Exit(demo.Main(os.Args[1:])) }
