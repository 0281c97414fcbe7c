package vm

import (
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// IPVS's generic netlink interface (include/uapi/linux/ip_vs.h).
const (
	ipvsCmdNewService = 1
	ipvsCmdNewDest    = 5
	ipvsCmdAttrSvc    = 1
	ipvsCmdAttrDest   = 2

	ipvsSvcAttrAF       = 1
	ipvsSvcAttrProtocol = 2
	ipvsSvcAttrAddr     = 3
	ipvsSvcAttrPort     = 4
	ipvsSvcAttrSched    = 6
	ipvsSvcAttrFlags    = 7
	ipvsSvcAttrTimeout  = 8
	ipvsSvcAttrNetmask  = 9

	ipvsDestAttrAddr      = 1
	ipvsDestAttrPort      = 2
	ipvsDestAttrFwdMethod = 3
	ipvsDestAttrWeight    = 4
	ipvsDestAttrUThresh   = 5
	ipvsDestAttrLThresh   = 6
	ipvsDestAttrAF        = 11

	ipvsMasq = 0
)

// ipvsHelper runs inside the VM: it makes one IPVS service with one
// destination per scheduler over generic netlink, as the project's proxier
// will, and checks the kernel lists them all.
func ipvsHelper() error {
	fam, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		return fmt.Errorf("IPVS generic netlink family: %w", err)
	}
	vip := []byte{192, 0, 2, 10}
	for i, sched := range schedulers {
		port := uint16(8000 + i)
		svc := func() *nl.RtAttr {
			a := nl.NewRtAttr(ipvsCmdAttrSvc, nil)
			a.AddRtAttr(ipvsSvcAttrAF, nl.Uint16Attr(unix.AF_INET))
			a.AddRtAttr(ipvsSvcAttrProtocol, nl.Uint16Attr(unix.IPPROTO_TCP))
			a.AddRtAttr(ipvsSvcAttrAddr, vip)
			a.AddRtAttr(ipvsSvcAttrPort, nl.BEUint16Attr(port))
			return a
		}
		s := svc()
		s.AddRtAttr(ipvsSvcAttrSched, nl.ZeroTerminated(sched))
		s.AddRtAttr(ipvsSvcAttrFlags, make([]byte, 8)) // struct ip_vs_flags{flags, mask}
		s.AddRtAttr(ipvsSvcAttrTimeout, nl.Uint32Attr(0))
		s.AddRtAttr(ipvsSvcAttrNetmask, nl.Uint32Attr(0xffffffff))
		if err := genl(fam.ID, ipvsCmdNewService, s); err != nil {
			return fmt.Errorf("new service with scheduler %s: %w", sched, err)
		}
		d := nl.NewRtAttr(ipvsCmdAttrDest, nil)
		d.AddRtAttr(ipvsDestAttrAddr, []byte{127, 0, 0, 1})
		d.AddRtAttr(ipvsDestAttrPort, nl.BEUint16Attr(8080))
		d.AddRtAttr(ipvsDestAttrFwdMethod, nl.Uint32Attr(ipvsMasq))
		d.AddRtAttr(ipvsDestAttrWeight, nl.Uint32Attr(1))
		d.AddRtAttr(ipvsDestAttrUThresh, nl.Uint32Attr(0))
		d.AddRtAttr(ipvsDestAttrLThresh, nl.Uint32Attr(0))
		d.AddRtAttr(ipvsDestAttrAF, nl.Uint16Attr(unix.AF_INET))
		if err := genl(fam.ID, ipvsCmdNewDest, svc(), d); err != nil {
			return fmt.Errorf("new destination for scheduler %s: %w", sched, err)
		}
	}
	table, err := os.ReadFile("/proc/net/ip_vs")
	if err != nil {
		return err
	}
	for i, sched := range schedulers {
		want := fmt.Sprintf("TCP  C000020A:%04X %s", 8000+i, sched)
		if !strings.Contains(string(table), want) {
			return fmt.Errorf("/proc/net/ip_vs lacks %q:\n%s", want, table)
		}
	}
	if n := strings.Count(string(table), "-> 7F000001:1F90      Masq    1"); n != len(schedulers) {
		return fmt.Errorf("/proc/net/ip_vs lists %d destinations, want %d:\n%s", n, len(schedulers), table)
	}
	fmt.Printf("ipvs helper: %d services, one per scheduler\n", len(schedulers))
	return nil
}

func genl(family uint16, cmd uint8, attrs ...*nl.RtAttr) error {
	req := nl.NewNetlinkRequest(int(family), unix.NLM_F_ACK)
	req.AddData(&nl.Genlmsg{Command: cmd, Version: 1})
	for _, a := range attrs {
		req.AddData(a)
	}
	_, err := req.Execute(unix.NETLINK_GENERIC, 0)
	return err
}
