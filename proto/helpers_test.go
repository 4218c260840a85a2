package proto

import (
	"errors"
	"testing"
)

// assertProblems checks that err lists exactly want, in order.
func assertProblems(t *testing.T, err error, want []Problem) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Fatalf("Validate: %v, want no problems", err)
		}
		return
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("Validate error = %v (%T), want *ValidationError", err, err)
	}
	if len(ve.Problems) != len(want) {
		t.Fatalf("got %d problems:\n%v\nwant %d:\n%v", len(ve.Problems), err, len(want), (&ValidationError{want}).Error())
	}
	for i := range want {
		if ve.Problems[i] != want[i] {
			t.Errorf("problem %d:\n  got  %s\n  want %s", i, ve.Problems[i], want[i])
		}
	}
}
