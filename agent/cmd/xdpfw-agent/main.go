// Command xdpfw-agent keeps this host's XDP firewall equal to what etcd
// says. (Placeholder while the agent is written.)
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "xdpfw-agent: not built yet")
	os.Exit(1)
}
