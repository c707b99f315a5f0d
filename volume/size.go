package volume

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Size limits of a volume.
const (
	MinSize = 1 << 20
	MaxSize = 64 << 40
	// SizeAlign is the granularity of volume sizes (one physical block).
	SizeAlign = 4096
)

var namePattern = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// ValidateName checks a volume name. Names become part of the target IQN,
// so they follow its rules: lowercase letters, digits, '.' and '-'.
func ValidateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("%w %q: use 1 to 63 lowercase letters, digits, '.' or '-', starting with a letter or digit", ErrInvalidName, name)
	}
	return nil
}

// ParseSize parses "10GiB", "10G", "512MiB", "1TiB", "1048576" (bytes).
// K, M, G, T and their KiB.. forms are binary multiples, as in qemu-img.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	i := 0
	for i < len(t) && (t[i] >= '0' && t[i] <= '9') {
		i++
	}
	num, unit := t[:i], strings.ToLower(strings.TrimSpace(t[i:]))
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || num == "" {
		return 0, fmt.Errorf("%w %q: give a whole number with an optional unit, e.g. 10GiB, 512MiB, 1TiB", ErrInvalidSize, s)
	}
	shift := map[string]uint{"": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20,
		"g": 30, "gb": 30, "gib": 30, "t": 40, "tb": 40, "tib": 40}
	sh, ok := shift[unit]
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q (use KiB, MiB, GiB or TiB)", ErrInvalidSize, s, t[i:])
	}
	if n > MaxSize>>sh {
		return 0, fmt.Errorf("%w %q: larger than the maximum of 64 TiB", ErrInvalidSize, s)
	}
	return n << sh, nil
}

// ValidateSize checks a volume size in bytes.
func ValidateSize(n int64) error {
	switch {
	case n < MinSize:
		return fmt.Errorf("%w %d: at least 1 MiB", ErrInvalidSize, n)
	case n > MaxSize:
		return fmt.Errorf("%w %d: at most 64 TiB", ErrInvalidSize, n)
	case n%SizeAlign != 0:
		return fmt.Errorf("%w %d: must be a multiple of 4 KiB", ErrInvalidSize, n)
	}
	return nil
}
