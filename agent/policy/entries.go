package policy

import (
	"errors"
	"fmt"

	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// contribution counts how many (rule, peer selector) pairs produce one map
// entry, by rule ID: the entry exists while any does, and names the lowest
// rule ID among them so that the choice does not depend on event order. It
// also remembers what the datapath had when the entry first changed since
// the last take, so that tracking changes costs no map operation of its own.
type contribution struct {
	ruleID uint32 // the lowest contributing rule ID, when n > 0
	n      uint32 // contributions from ruleID; 0: no entry (a tombstone kept until the next take)
	// others counts contributions from higher rule IDs; nil for the common
	// entry only one policy produces.
	others map[uint32]uint32

	dirty      bool   // changed since the last take; the key is in entryTable.dirty
	prevFound  bool   // before that change, the entry existed ...
	prevRuleID uint32 // ... with this rule ID
}

// entryTable is the desired policy map with reference counts, and the
// changes since they were last taken. Not safe for concurrent use.
type entryTable struct {
	// entries holds the live entries (n > 0) and, until the next take,
	// tombstones of the ones that went.
	entries map[maps.PolicyEntryKey]contribution
	live    int
	dirty   []maps.PolicyEntryKey

	enforce  map[protocol.NumericIdentity]enforceCount
	dirtyEnf map[protocol.NumericIdentity]maps.Enforced
}

// enforceCount counts the policies that put an identity into default deny.
type enforceCount struct{ ingress, egress int32 }

func (c enforceCount) enforced() maps.Enforced {
	return maps.Enforced{Ingress: c.ingress > 0, Egress: c.egress > 0}
}

func newEntryTable() *entryTable {
	return &entryTable{
		entries:  make(map[maps.PolicyEntryKey]contribution),
		enforce:  make(map[protocol.NumericIdentity]enforceCount),
		dirtyEnf: make(map[protocol.NumericIdentity]maps.Enforced),
	}
}

// touch records, before c's visible state (existence or rule ID) changes,
// what it was.
func (t *entryTable) touch(k maps.PolicyEntryKey, c *contribution) {
	if c.dirty {
		return
	}
	c.dirty, c.prevFound, c.prevRuleID = true, c.n > 0, c.ruleID
	t.dirty = append(t.dirty, k)
}

func (t *entryTable) inc(k maps.PolicyEntryKey, ruleID uint32) {
	c := t.entries[k]
	switch {
	case c.n == 0:
		t.touch(k, &c)
		c.ruleID, c.n = ruleID, 1
		t.live++
	case c.ruleID == ruleID:
		c.n++
	case ruleID < c.ruleID:
		t.touch(k, &c)
		if c.others == nil {
			c.others = make(map[uint32]uint32, 1)
		}
		c.others[c.ruleID] += c.n
		c.ruleID, c.n = ruleID, 1
	default:
		if c.others == nil {
			c.others = make(map[uint32]uint32, 1)
		}
		c.others[ruleID]++
	}
	t.entries[k] = c
}

func (t *entryTable) dec(k maps.PolicyEntryKey, ruleID uint32) {
	c := t.entries[k]
	switch {
	case c.n == 0:
		panic("policy: entry table out of balance: " + keyString(k))
	case ruleID != c.ruleID:
		if c.others[ruleID] == 0 {
			panic("policy: entry table out of balance: " + keyString(k))
		}
		if c.others[ruleID]--; c.others[ruleID] == 0 {
			delete(c.others, ruleID)
		}
	case c.n > 1:
		c.n--
	default:
		t.touch(k, &c)
		if len(c.others) == 0 {
			// Keep a tombstone: take reports the deletion.
			c.n, c.others = 0, nil
			t.live--
			break
		}
		next := uint32(0)
		for id := range c.others {
			if next == 0 || id < next {
				next = id
			}
		}
		c.ruleID, c.n = next, c.others[next]
		delete(c.others, next)
		if len(c.others) == 0 {
			c.others = nil
		}
	}
	t.entries[k] = c
}

func (t *entryTable) addEnforce(id protocol.NumericIdentity, ingress, egress bool, delta int32) {
	c := t.enforce[id]
	before := c.enforced()
	if ingress {
		c.ingress += delta
	}
	if egress {
		c.egress += delta
	}
	if c.ingress < 0 || c.egress < 0 {
		panic("policy: enforcement count below zero")
	}
	if c.ingress == 0 && c.egress == 0 {
		delete(t.enforce, id)
	} else {
		t.enforce[id] = c
	}
	if c.enforced() != before {
		if _, ok := t.dirtyEnf[id]; !ok {
			t.dirtyEnf[id] = before
		}
	}
}

// Changes is what changed in the desired maps since the last TakeChanges
// or Snapshot. Apply writes it.
type Changes struct {
	// Upserts are entries to write: new ones, and ones whose RuleID
	// changed.
	Upserts map[maps.PolicyEntryKey]maps.PolicyEntry
	// Deletes are entries to remove.
	Deletes []maps.PolicyEntryKey
	// Enforcement holds the identities whose enforcement changed, with the
	// new value; the zero Enforced means the entry goes away.
	Enforcement map[protocol.NumericIdentity]maps.Enforced
}

// Empty reports whether there is nothing to write.
func (ch Changes) Empty() bool {
	return len(ch.Upserts) == 0 && len(ch.Deletes) == 0 && len(ch.Enforcement) == 0
}

// PolicyWriter writes policy map entries; *maps.Policy is one.
type PolicyWriter interface {
	Upsert(maps.PolicyEntryKey, maps.PolicyEntry) error
	Delete(maps.PolicyEntryKey) error
}

// EnforcementWriter writes the enforcement map; *maps.Enforcement is one.
type EnforcementWriter interface {
	Set(protocol.NumericIdentity, maps.Enforced) error
}

// Apply writes the changes in the order that never drops traffic that is
// allowed both before and after: new entries first, then enforcement (so an
// endpoint goes into default deny only once its allow entries exist, and
// leaves it before they go), then deletions. It writes everything it can
// and returns every error; after an error, reconcile from Snapshot. Bump
// the datapath's policy revision afterwards so tracked flows are checked
// again.
func (ch Changes) Apply(p PolicyWriter, e EnforcementWriter) error {
	var errs []error
	for k, v := range ch.Upserts {
		if err := p.Upsert(k, v); err != nil {
			errs = append(errs, err)
		}
	}
	for id, en := range ch.Enforcement {
		if err := e.Set(id, en); err != nil {
			errs = append(errs, err)
		}
	}
	for _, k := range ch.Deletes {
		if err := p.Delete(k); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// take returns the changes and forgets them.
func (t *entryTable) take() Changes {
	ch := Changes{
		Upserts:     make(map[maps.PolicyEntryKey]maps.PolicyEntry),
		Enforcement: make(map[protocol.NumericIdentity]maps.Enforced),
	}
	note := func(k maps.PolicyEntryKey, c contribution) {
		switch {
		case c.n > 0 && (!c.prevFound || c.prevRuleID != c.ruleID):
			ch.Upserts[k] = maps.PolicyEntry{Verdict: maps.Allow, RuleID: c.ruleID}
		case c.n == 0 && c.prevFound:
			ch.Deletes = append(ch.Deletes, k)
		}
	}
	if t.manyDirty() {
		for k, c := range t.entries {
			if c.dirty {
				note(k, c)
			}
		}
	} else {
		for _, k := range t.dirty {
			note(k, t.entries[k])
		}
	}
	for id, before := range t.dirtyEnf {
		if now := t.enforce[id].enforced(); now != before {
			ch.Enforcement[id] = now
		}
	}
	t.forgetChanges()
	return ch
}

// manyDirty says whether walking the whole table beats looking the dirty
// keys up one by one: after a full compile every key is dirty, and a
// sequential walk avoids a cache miss per key.
func (t *entryTable) manyDirty() bool { return len(t.dirty) > len(t.entries)/4 }

// forgetChanges starts change tracking anew from the current state.
func (t *entryTable) forgetChanges() {
	forget := func(k maps.PolicyEntryKey, c contribution) {
		if c.n == 0 {
			delete(t.entries, k)
			return
		}
		c.dirty = false
		t.entries[k] = c
	}
	if t.manyDirty() {
		for k, c := range t.entries {
			if c.dirty {
				forget(k, c)
			}
		}
	} else {
		for _, k := range t.dirty {
			forget(k, t.entries[k])
		}
	}
	// Drop a large backing array rather than keep it for good.
	if cap(t.dirty) > 4096 {
		t.dirty = nil
	} else {
		t.dirty = t.dirty[:0]
	}
	clear(t.dirtyEnf)
}

// snapshot returns the whole desired state and forgets the changes.
func (t *entryTable) snapshot() (map[maps.PolicyEntryKey]maps.PolicyEntry, map[protocol.NumericIdentity]maps.Enforced) {
	entries := make(map[maps.PolicyEntryKey]maps.PolicyEntry, t.live)
	for k, c := range t.entries {
		if c.n > 0 {
			entries[k] = maps.PolicyEntry{Verdict: maps.Allow, RuleID: c.ruleID}
		}
	}
	enf := make(map[protocol.NumericIdentity]maps.Enforced, len(t.enforce))
	for id, c := range t.enforce {
		enf[id] = c.enforced()
	}
	t.forgetChanges()
	return entries, enf
}

func keyString(k maps.PolicyEntryKey) string {
	return fmt.Sprintf("%s local %d remote %d port %d/%s", k.Direction, k.LocalIdentity, k.RemoteIdentity, k.Port, k.Protocol)
}
