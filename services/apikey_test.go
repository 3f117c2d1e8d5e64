package services

import "testing"

func TestBearerOK(t *testing.T) {
	for _, tc := range []struct {
		header string
		ok     bool
	}{
		{"Bearer sk-1", true},
		{"Bearer  sk-1 ", true},
		{"Bearer sk-2", false},
		{"Bearer sk-1x", false},
		{"Bearer sk-", false},
		{"bearer sk-1", false},
		{"sk-1", false},
		{"", false},
		{"Basic c2stMQ==", false},
	} {
		if got := BearerOK(tc.header, "sk-1"); got != tc.ok {
			t.Errorf("BearerOK(%q) = %v, want %v", tc.header, got, tc.ok)
		}
	}
}
