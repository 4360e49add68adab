// Package archtest holds the architecture check for datapath/: its packages
// must not depend on the mesh apiserver or the agent, which program the
// datapath, not the other way round.
package archtest
