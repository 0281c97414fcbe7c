package netfilter

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/model"
)

// TableStamp is what the kernel says of an iptables-legacy table without
// handing over its rules: where each built-in chain starts and ends, how
// many rules the table has and how many bytes they take. Every rule added,
// deleted or flushed, by anyone, changes it.
type TableStamp struct {
	HookEntry, Underflow [5]uint32
	Rules, Size          uint32
}

// StampReader reads table stamps.
type StampReader interface {
	// Stamp returns a table's stamp; a table the kernel does not have is
	// a zero stamp.
	Stamp(t Table) (TableStamp, error)
}

// LegacyStamps reads the stamps of iptables-legacy's tables (the kernel's
// x_tables) in the network namespace of the calling thread: one
// getsockopt of a few dozen bytes, where any iptables-legacy program reads
// the whole table (150 ms for the nat table at 10,000 services).
type LegacyStamps struct{ Family model.Family }

// ipTableInfo is struct ipt_getinfo (and ip6t_getinfo, the same).
type ipTableInfo struct {
	Name       [32]byte
	ValidHooks uint32
	HookEntry  [5]uint32
	Underflow  [5]uint32
	NumEntries uint32
	Size       uint32
}

// soGetInfo is IPT_SO_GET_INFO and IP6T_SO_GET_INFO.
const soGetInfo = 64

// Stamp implements StampReader.
func (s LegacyStamps) Stamp(t Table) (TableStamp, error) {
	domain, level := unix.AF_INET, unix.IPPROTO_IP
	if s.Family == model.IPv6 {
		domain, level = unix.AF_INET6, unix.IPPROTO_IPV6
	}
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return TableStamp{}, fmt.Errorf("reading the %s table's info: %w", t, err)
	}
	defer unix.Close(fd)
	var info ipTableInfo
	copy(info.Name[:len(info.Name)-1], t)
	size := uint32(unsafe.Sizeof(info))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soGetInfo,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	switch {
	case errors.Is(errno, unix.ENOENT):
		return TableStamp{}, nil // no such table (its module is not loaded)
	case errno != 0:
		return TableStamp{}, fmt.Errorf("reading the %s table's info: %w", t, errno)
	}
	return TableStamp{HookEntry: info.HookEntry, Underflow: info.Underflow, Rules: info.NumEntries, Size: info.Size}, nil
}
