package controlplane

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
)

// Ports are drawn below Linux's ephemeral range (32768 and up), so a port
// picked here cannot be taken meanwhile by some outgoing connection that the
// kernel numbered; only another program picking a fixed port could collide,
// and Start retries when that happens.
const (
	lowestPort  = 20000
	portsInPool = 12000
)

// freeLoopbackPorts returns n distinct ports that nothing listens on at
// 127.0.0.1 right now.
func freeLoopbackPorts(n int) ([]int, error) {
	var held []net.Listener
	var ports []int
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	const attempts = 200
	for i := 0; i < attempts && len(held) < n; i++ {
		port := lowestPort + rand.IntN(portsInPool)
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken, or already held by us
		}
		held = append(held, l)
		ports = append(ports, port)
	}
	if len(held) < n {
		return nil, fmt.Errorf("found only %d free loopback ports of %d after %d tries", len(held), n, attempts)
	}
	return ports, nil
}

// errPortTaken means a program could not bind the port it was given; the
// caller picks new ports and tries again.
var errPortTaken = errors.New("port already in use")
