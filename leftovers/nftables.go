package leftovers

import (
	"bytes"
)

// kubeProxyNFTable is the table of kube-proxy's nftables mode, one in each
// of the ip and ip6 families.
const kubeProxyNFTable = "kube-proxy"

// NFTable names an nftables table: "ip kube-proxy".
type NFTable struct {
	Family, Name string
}

func (t NFTable) String() string { return t.Family + " " + t.Name }

// RenderNFTDelete is the "nft -f -" input that deletes tables in one
// transaction.
func RenderNFTDelete(tables []NFTable) []byte {
	var b bytes.Buffer
	for _, t := range tables {
		b.WriteString("delete table " + t.String() + "\n")
	}
	return b.Bytes()
}
