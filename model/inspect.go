package model

// ObjectState says whether the kernel holds one object a service port
// needs as svcproxy wants it.
type ObjectState string

// The states of a kernel object.
const (
	InPlace ObjectState = "in place"
	Missing ObjectState = "missing"
	Differs ObjectState = "differs"
)

// KernelObject is one thing a service port needs of the kernel (a chain
// of its own, a rule in a chain it shares, a virtual server, an address on
// kube-ipvs0, a set entry) and whether the kernel holds it: what
// `svcproxy list` and `svcproxy explain` show an operator.
type KernelObject struct {
	// Kind is what the object is: "chain", "rule", "virtual server",
	// "address", "set entry".
	Kind string `json:"kind"`
	// Name is how an operator finds it: "nat SVCPROXY-SVC-X",
	// "filter SVCPROXY-FILTER -d 10.96.0.1/32 ... -j REJECT",
	// "TCP 10.96.0.1:80".
	Name  string      `json:"name"`
	State ObjectState `json:"state"`
	// Detail says what differs, when it does.
	Detail string `json:"detail,omitempty"`
}

// The sums of a port's kernel objects.
const (
	StatusInSync  = "in sync"
	StatusDrifted = "drifted"
	StatusMissing = "missing"
)

// PortStatus sums up a port's objects: in sync when the kernel holds each
// as wanted, missing when it holds none of them, drifted in between. A
// port that needs nothing (no address of this family) is in sync.
func PortStatus(objs []KernelObject) string {
	held := 0
	for _, o := range objs {
		if o.State == InPlace {
			held++
		}
	}
	switch {
	case held == len(objs):
		return StatusInSync
	case held == 0 && !differs(objs):
		return StatusMissing
	}
	return StatusDrifted
}

func differs(objs []KernelObject) bool {
	for _, o := range objs {
		if o.State == Differs {
			return true
		}
	}
	return false
}
