package scsi

import (
	"context"
	"errors"
	"fmt"

	"tandem.io/tandem/volume/block"
)

// Sense keys (SPC-4 §4.5.6).
const (
	KeyNoSense        = 0x0
	KeyNotReady       = 0x2
	KeyMediumError    = 0x3
	KeyHardwareError  = 0x4
	KeyIllegalRequest = 0x5
	KeyUnitAttention  = 0x6
	KeyDataProtect    = 0x7
	KeyAbortedCommand = 0xb
	KeyMiscompare     = 0xe
)

// ASC/ASCQ pairs used by the target, as 0xAAQQ.
const (
	ascNone                   = 0x0000
	ascWriteError             = 0x0c00
	ascUnrecoveredRead        = 0x1100
	ascParamListLength        = 0x1a00
	ascMiscompareVerify       = 0x1d00
	ascInvalidOpcode          = 0x2000
	ascLBAOutOfRange          = 0x2100
	ascInvalidFieldCDB        = 0x2400
	ascLUNotSupported         = 0x2500
	ascInvalidFieldParam      = 0x2600
	ascWriteProtected         = 0x2700
	ascSoftwareWriteProtected = 0x2702
	ascSpaceAllocFailed       = 0x2707
	ascPowerOnReset           = 0x2900
	ascBusDeviceReset         = 0x2903
	ascTargetReset            = 0x2902
	ascModeParamsChanged      = 0x2a01
	ascCapacityChanged        = 0x2a09
	ascSavingNotSupported     = 0x3900
	ascInternalTargetFailure  = 0x4400
	ascInvalidFieldInInfoUnit = 0x0e03
	ascInvalidReleaseOfPR     = 0x2604
	ascReservationsPreempted  = 0x2a03
	ascReservationsReleased   = 0x2a04
	ascRegistrationsPreempted = 0x2a05
)

// ASCCapacityChanged is CAPACITY DATA HAS CHANGED, for Target.UnitAttention
// after a volume grows.
const ASCCapacityChanged = ascCapacityChanged

// ASCMediumChanged is NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED, for
// Target.UnitAttention after a volume's content was replaced (revert).
const ASCMediumChanged = 0x2800

// SenseError is a command's failure as sense data. Every handler reports
// errors this way; Execute turns it into CHECK CONDITION.
type SenseError struct {
	Key uint8
	ASC uint16 // ASC in the high byte, ASCQ in the low byte
	// Field, when FieldValid, points at the offending byte of the CDB (or of
	// the parameter list when InParam), with Bit+BitValid for a bit.
	FieldValid, InParam, BitValid bool
	Field                         uint16
	Bit                           uint8
	// Info, when InfoValid, goes in the INFORMATION field (e.g. the first
	// miscompared byte).
	InfoValid bool
	Info      uint32
}

func (e *SenseError) Error() string {
	return fmt.Sprintf("scsi: sense key 0x%x asc/ascq 0x%02x/0x%02x", e.Key, e.ASC>>8, e.ASC&0xff)
}

// Fixed returns fixed-format sense data (SPC-4 §4.5.3).
func (e *SenseError) Fixed() []byte {
	s := make([]byte, 18)
	s[0] = 0x70
	s[2] = e.Key
	if e.InfoValid {
		s[0] |= 0x80
		s[3], s[4], s[5], s[6] = byte(e.Info>>24), byte(e.Info>>16), byte(e.Info>>8), byte(e.Info)
	}
	s[7] = 10
	s[12], s[13] = byte(e.ASC>>8), byte(e.ASC)
	if e.FieldValid {
		s[15] = 0x80
		if !e.InParam {
			s[15] |= 0x40
		}
		if e.BitValid {
			s[15] |= 0x08 | e.Bit&7
		}
		s[16], s[17] = byte(e.Field>>8), byte(e.Field)
	}
	return s
}

// descriptorSense turns fixed-format sense data (what Fixed returns) into
// descriptor format (SPC-4 §4.5.2): the INFORMATION field, when valid, as an
// information descriptor, the field pointer, when valid, as a sense key
// specific descriptor.
func descriptorSense(fixed []byte) []byte {
	if len(fixed) < 18 || fixed[0]&0x7f != 0x70 {
		return fixed
	}
	d := []byte{0x72, fixed[2] & 0x0f, fixed[12], fixed[13], 0, 0, 0, 0}
	if fixed[0]&0x80 != 0 {
		d = append(d, 0x00, 0x0a, 0x80, 0, 0, 0, 0, 0, fixed[3], fixed[4], fixed[5], fixed[6])
	}
	if fixed[15]&0x80 != 0 {
		d = append(d, 0x02, 0x06, 0, 0, fixed[15], fixed[16], fixed[17], 0)
	}
	d[7] = byte(len(d) - 8)
	return d
}

func sense(key uint8, asc uint16) *SenseError { return &SenseError{Key: key, ASC: asc} }

// invalidField reports INVALID FIELD IN CDB pointing at byte (and bit, when
// bit >= 0).
func invalidField(byteIdx int, bit int) *SenseError {
	e := &SenseError{Key: KeyIllegalRequest, ASC: ascInvalidFieldCDB, FieldValid: true, Field: uint16(byteIdx)}
	if bit >= 0 {
		e.BitValid, e.Bit = true, uint8(bit)
	}
	return e
}

func invalidParam(byteIdx int) *SenseError {
	return &SenseError{Key: KeyIllegalRequest, ASC: ascInvalidFieldParam, FieldValid: true, InParam: true, Field: uint16(byteIdx)}
}

var (
	errInvalidOpcode = sense(KeyIllegalRequest, ascInvalidOpcode)
	errLBARange      = sense(KeyIllegalRequest, ascLBAOutOfRange)
	errLUNotSupport  = sense(KeyIllegalRequest, ascLUNotSupported)
	errWriteProtect  = sense(KeyDataProtect, ascWriteProtected)
	// errSoftwareWriteProtect: SWP set in the control mode page.
	errSoftwareWriteProtect = sense(KeyDataProtect, ascSoftwareWriteProtected)
	errParamLength          = sense(KeyIllegalRequest, ascParamListLength)
)

// deviceError maps a block.Device error to sense data.
func deviceError(ctx context.Context, err error, write bool) *SenseError {
	var se *SenseError
	switch {
	case errors.As(err, &se):
		return se
	case errors.Is(err, block.ErrOutOfRange):
		return errLBARange
	case errors.Is(err, block.ErrNoSpace):
		return sense(KeyDataProtect, ascSpaceAllocFailed)
	case errors.Is(err, block.ErrMedium) && write:
		return sense(KeyMediumError, ascWriteError)
	case errors.Is(err, block.ErrMedium):
		return sense(KeyMediumError, ascUnrecoveredRead)
	case errors.Is(err, block.ErrClosed), errors.Is(err, context.Canceled), ctx.Err() != nil:
		return sense(KeyAbortedCommand, ascNone)
	}
	return sense(KeyHardwareError, ascInternalTargetFailure)
}
