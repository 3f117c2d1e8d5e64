package tokenizer

import "errors"

// Sentinels for errors.Is; every error returned by Load and FromJSON wraps one of them.
var (
	// ErrUnsupported reports a well-formed file that asks for something this package does not implement.
	ErrUnsupported = errors.New("tokenizer: unsupported tokenizer feature")
	// ErrMalformed reports a file that cannot be parsed or contradicts itself.
	ErrMalformed = errors.New("tokenizer: malformed tokenizer file")
)

const (
	fileTokenizer = "tokenizer.json"
	fileConfig    = "tokenizer_config.json"
)

// fileError names the file and the field at fault, e.g.
// `tokenizer: tokenizer.json: model.type "WordPiece" not supported`.
type fileError struct {
	file string
	msg  string
	kind error // ErrUnsupported or ErrMalformed
	err  error // underlying cause, may be nil
}

func (e *fileError) Error() string {
	s := "tokenizer: " + e.file + ": " + e.msg
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

func (e *fileError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}

func unsupported(file, msg string) error {
	return &fileError{file: file, msg: msg, kind: ErrUnsupported}
}

func malformed(file, msg string, err error) error {
	return &fileError{file: file, msg: msg, kind: ErrMalformed, err: err}
}
