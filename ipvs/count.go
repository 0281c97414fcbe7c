package ipvs

import (
	"net/netip"

	"github.com/svcproxy/svcproxy/model"
)

// countingKernel counts the requests made of a Kernel: a sync's KernelOps.
type countingKernel struct {
	Kernel
	ops int
}

func (c *countingKernel) VirtualServers(f model.Family) ([]VirtualServer, error) {
	c.ops++
	return c.Kernel.VirtualServers(f)
}

func (c *countingKernel) RealServers(vs VSKey) ([]RealStatus, error) {
	c.ops++
	return c.Kernel.RealServers(vs)
}

func (c *countingKernel) Table(f model.Family) (map[VSKey]Listed, error) {
	c.ops++
	return c.Kernel.Table(f)
}

func (c *countingKernel) AddVirtualServer(vs VirtualServer) error {
	c.ops++
	return c.Kernel.AddVirtualServer(vs)
}

func (c *countingKernel) UpdateVirtualServer(vs VirtualServer) error {
	c.ops++
	return c.Kernel.UpdateVirtualServer(vs)
}

func (c *countingKernel) DeleteVirtualServer(vs VSKey) error {
	c.ops++
	return c.Kernel.DeleteVirtualServer(vs)
}

func (c *countingKernel) AddRealServer(vs VSKey, rs RealServer) error {
	c.ops++
	return c.Kernel.AddRealServer(vs, rs)
}

func (c *countingKernel) UpdateRealServer(vs VSKey, rs RealServer) error {
	c.ops++
	return c.Kernel.UpdateRealServer(vs, rs)
}

func (c *countingKernel) DeleteRealServer(vs VSKey, rs netip.AddrPort) error {
	c.ops++
	return c.Kernel.DeleteRealServer(vs, rs)
}

func (c *countingKernel) SetTimeouts(t Timeouts) error {
	c.ops++
	return c.Kernel.SetTimeouts(t)
}

func (c *countingKernel) EnsureDummy(name string) error {
	c.ops++
	return c.Kernel.EnsureDummy(name)
}

func (c *countingKernel) LinkAddrs(name string, f model.Family) ([]netip.Addr, error) {
	c.ops++
	return c.Kernel.LinkAddrs(name, f)
}

func (c *countingKernel) AddAddr(name string, a netip.Addr) error {
	c.ops++
	return c.Kernel.AddAddr(name, a)
}

func (c *countingKernel) DelAddr(name string, a netip.Addr) error {
	c.ops++
	return c.Kernel.DelAddr(name, a)
}

func (c *countingKernel) HostAddrs(f model.Family, exclude string) ([]netip.Addr, error) {
	c.ops++
	return c.Kernel.HostAddrs(f, exclude)
}

func (c *countingKernel) LinkNames() ([]string, error) {
	c.ops++
	return c.Kernel.LinkNames()
}

func (c *countingKernel) DeleteLink(name string) error {
	c.ops++
	return c.Kernel.DeleteLink(name)
}

func (c *countingKernel) ListSets(f model.Family) ([]Listing, error) {
	c.ops++
	return c.Kernel.ListSets(f)
}

func (c *countingKernel) CreateSet(s Set) error {
	c.ops++
	return c.Kernel.CreateSet(s)
}

func (c *countingKernel) SetEntries(s Set) ([]Entry, error) {
	c.ops++
	return c.Kernel.SetEntries(s)
}

func (c *countingKernel) AddEntry(s Set, e Entry) error {
	c.ops++
	return c.Kernel.AddEntry(s, e)
}

func (c *countingKernel) DelEntry(s Set, e Entry) error {
	c.ops++
	return c.Kernel.DelEntry(s, e)
}

func (c *countingKernel) DestroySet(name string) error {
	c.ops++
	return c.Kernel.DestroySet(name)
}

func (c *countingKernel) ReadSysctl(name string) (string, error) {
	c.ops++
	return c.Kernel.ReadSysctl(name)
}

func (c *countingKernel) WriteSysctl(name, value string) error {
	c.ops++
	return c.Kernel.WriteSysctl(name, value)
}
