// etcd for podlock's integration cluster, built from the Go module proxy by 'make cluster-deps'.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
