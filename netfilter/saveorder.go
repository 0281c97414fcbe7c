package netfilter

import (
	"slices"
	"strings"
)

// SaveOrder puts a rule's header options (-s, -d, -i, -o, -p, each with
// its "!") first, in the order iptables-save prints them, and leaves the
// matches and the target as they are: for rules built from fragments
// that do not start with the header (a set match before the protocol),
// so that the kernel's rule reads back as the compiler wrote it.
func SaveOrder(rule string) string {
	tokens := ruleTokens(rule)
	header := map[string][]string{}
	var rest []string
	for i := 0; i < len(tokens); i++ {
		t, neg := tokens[i], false
		if t == "!" && i+1 < len(tokens) {
			t, neg = tokens[i+1], true
		}
		if t == "-j" || t == "-g" {
			rest = append(rest, tokens[i:]...)
			break
		}
		step := 1
		if neg {
			step = 2
		}
		if slices.Contains(headerOptions, t) && i+step < len(tokens) {
			header[t] = tokens[i : i+step+1]
			i += step
			continue
		}
		rest = append(rest, tokens[i])
	}
	var out []string
	for _, opt := range headerOptions {
		out = append(out, header[opt]...)
	}
	return strings.Join(append(out, rest...), " ")
}

// headerOptions are the options iptables-save prints before any match, in
// its order.
var headerOptions = []string{"-s", "-d", "-i", "-o", "-p"}

// ruleTokens splits a rule at spaces, keeping a quoted comment whole.
func ruleTokens(rule string) []string {
	var tokens []string
	for rule != "" {
		rule = strings.TrimLeft(rule, " ")
		if rule == "" {
			break
		}
		end := strings.IndexByte(rule, ' ')
		if rule[0] == '"' {
			if q := strings.IndexByte(rule[1:], '"'); q >= 0 {
				end = q + 2
				if end == len(rule) {
					end = -1
				}
			}
		}
		if end < 0 {
			tokens = append(tokens, rule)
			break
		}
		tokens = append(tokens, rule[:end])
		rule = rule[end:]
	}
	return tokens
}
