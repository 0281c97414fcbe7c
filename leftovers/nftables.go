package leftovers

import (
	"bufio"
	"bytes"
	"strings"
)

// kubeProxyNFTable is the table of kube-proxy's nftables mode, one in each
// of the ip and ip6 families.
const kubeProxyNFTable = "kube-proxy"

// NFTable names an nftables table: "ip kube-proxy".
type NFTable struct {
	Family, Name string
}

func (t NFTable) String() string { return t.Family + " " + t.Name }

// KubeProxyNFTables picks kube-proxy's tables out of "nft list tables".
func KubeProxyNFTables(list []byte) []NFTable {
	var out []NFTable
	sc := bufio.NewScanner(bytes.NewReader(list))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "table" && f[2] == kubeProxyNFTable && (f[1] == "ip" || f[1] == "ip6") {
			out = append(out, NFTable{Family: f[1], Name: f[2]})
		}
	}
	return out
}

// RenderNFTDelete is the "nft -f -" input that deletes tables in one
// transaction.
func RenderNFTDelete(tables []NFTable) []byte {
	var b bytes.Buffer
	for _, t := range tables {
		b.WriteString("delete table " + t.String() + "\n")
	}
	return b.Bytes()
}
