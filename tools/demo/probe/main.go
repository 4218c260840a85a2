// Command probe is the demo's traffic tool: a server that accepts TCP
// connections and echoes UDP datagrams, and a client that says whether one
// connection or one datagram got an answer. demo.sh runs it inside the
// namespace hosts with nsenter.
//
//	probe serve tcp/22 tcp/80 udp/53 ...   # until killed
//	probe tcp 198.18.0.2 22                 # exit 0: answered, 1: no answer, 2: error
//	probe udp 2001:db8::2 53
package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// timeout bounds one connection or echo: on a veth an answer takes well
// under a millisecond, so one that has not come by then was dropped.
const timeout = time.Second

const (
	exitAnswered = 0
	exitNoAnswer = 1
	exitError    = 2
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		if err := serve(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "probe serve: %v\n", err)
			os.Exit(exitError)
		}
	case "tcp", "udp":
		if len(os.Args) != 4 {
			usage()
		}
		os.Exit(probe(os.Args[1], os.Args[2], os.Args[3]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: probe serve tcp/PORT|udp/PORT ... | probe tcp|udp ADDR PORT")
	os.Exit(exitError)
}

// serve listens on every service given, on all addresses (IPv4 and IPv6),
// until SIGINT or SIGTERM.
func serve(services []string) error {
	if len(services) == 0 {
		return errors.New("no service given")
	}
	for _, s := range services {
		proto, port, ok := strings.Cut(s, "/")
		if _, err := strconv.ParseUint(port, 10, 16); !ok || err != nil {
			return fmt.Errorf("%q: want tcp/PORT or udp/PORT", s)
		}
		switch proto {
		case "tcp":
			ln, err := net.Listen("tcp", ":"+port)
			if err != nil {
				return err
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
		case "udp":
			pc, err := net.ListenPacket("udp", ":"+port)
			if err != nil {
				return err
			}
			go func() {
				buf := make([]byte, 2048)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
		default:
			return fmt.Errorf("%q: want tcp/PORT or udp/PORT", s)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}

// probe makes one TCP connection or sends one UDP datagram and waits for
// its echo; the exit code says whether an answer came.
func probe(proto, addr, port string) int {
	ip, err := netip.ParseAddr(addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: %v\n", err)
		return exitError
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: port %q: %v\n", port, err)
		return exitError
	}
	dst := netip.AddrPortFrom(ip, uint16(p)).String()
	c, err := net.DialTimeout(proto, dst, timeout)
	if err != nil {
		return verdict(err)
	}
	defer c.Close()
	if proto == "tcp" {
		return exitAnswered
	}
	msg := []byte(fmt.Sprintf("xdpfw demo %d", time.Now().UnixNano()))
	if _, err := c.Write(msg); err != nil {
		return verdict(err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 2048)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return verdict(err)
		}
		if bytes.Equal(buf[:n], msg) {
			return exitAnswered
		}
	}
}

// verdict turns an error into an exit code: a timeout means nothing came
// back; anything else is a broken set-up and is said so.
func verdict(err error) int {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return exitNoAnswer
	}
	fmt.Fprintf(os.Stderr, "probe: %v\n", err)
	return exitError
}
