package state

import (
	"errors"
	"testing"
)

func TestLockNamesItsHolder(t *testing.T) {
	d := Dir(t.TempDir())
	if pid, err := d.Holder(); err != nil || pid != 0 {
		t.Fatalf("Holder of a free lab = %d, %v", pid, err)
	}
	f, err := d.Lock(4242)
	if err != nil {
		t.Fatal(err)
	}
	if pid, err := d.Holder(); err != nil || pid != 4242 {
		t.Errorf("Holder = %d, %v; want 4242", pid, err)
	}
	if _, err := d.Lock(1); !errors.Is(err, ErrLocked) {
		t.Errorf("second Lock = %v, want ErrLocked", err)
	}
	if err := SetLockPID(f, 777); err != nil {
		t.Fatal(err)
	}
	if pid, _ := d.Holder(); pid != 777 {
		t.Errorf("Holder after SetLockPID = %d", pid)
	}
	f.Close()
	if pid, err := d.Holder(); err != nil || pid != 0 {
		t.Errorf("Holder after release = %d, %v", pid, err)
	}
	if pid, err := For(t.TempDir(), "missing").Holder(); err != nil || pid != 0 {
		t.Errorf("Holder of a lab without state = %d, %v", pid, err)
	}
}
