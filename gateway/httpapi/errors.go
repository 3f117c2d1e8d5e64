package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/codes"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/gateway"
)

// apiError is an error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
type apiError struct {
	status  int
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func (e *apiError) Error() string { return e.Message }

// grpcCode is the status code of the gRPC API's answer to the same refusal (the failure
// metric's label).
func (e *apiError) grpcCode() codes.Code {
	switch e.status {
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	}
	return codes.Unknown
}

func str(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// badRequest is a 400 naming the field param.
func badRequest(param, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Type: "invalid_request_error", Param: str(param),
		Message: fmt.Sprintf(format, args...)}
}

// paramNames maps diffusion's wire names to this API's.
var paramNames = map[string]string{"gen_length": "max_tokens", "stop_strings": "stop"}

// fromError maps an error of the gateway or engine to its HTTP status through the mesh's one
// error table (gateway.Codes): InvalidArgument 400, ResourceExhausted 429, Unavailable 503,
// DeadlineExceeded 504, Canceled 499 (the client went away), anything else 500.
func fromError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	switch gateway.Codes.Code(err) {
	case codes.InvalidArgument:
		var pe *diffusion.ParamError
		if errors.As(err, &pe) {
			name := pe.Field
			if n, ok := paramNames[name]; ok {
				name = n
			}
			msg := fmt.Sprintf("invalid %s: %s", name, pe.Msg)
			if pe.Value != "" {
				msg = fmt.Sprintf("invalid %s %s: %s", name, pe.Value, pe.Msg)
			}
			return badRequest(name, "%s", msg)
		}
		return badRequest("", "%s", err.Error())
	case codes.ResourceExhausted:
		return &apiError{status: http.StatusTooManyRequests, Type: "rate_limit_error", Code: str("queue_full"),
			Message: "the gateway's queue is full; retry later: " + err.Error()}
	case codes.Unavailable:
		return &apiError{status: http.StatusServiceUnavailable, Type: "server_error", Code: str("unavailable"),
			Message: "the mesh cannot serve now (no attnd or expertd reachable): " + err.Error()}
	case codes.DeadlineExceeded:
		return &apiError{status: http.StatusGatewayTimeout, Type: "server_error", Code: str("timeout"), Message: err.Error()}
	case codes.Canceled:
		return &apiError{status: 499, Type: "invalid_request_error", Code: str("cancelled"), Message: err.Error()}
	}
	return &apiError{status: http.StatusInternalServerError, Type: "server_error", Message: err.Error()}
}

// writeError sends e as the response.
func writeError(w http.ResponseWriter, e *apiError) {
	if e.status == http.StatusTooManyRequests || e.status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, e.status, map[string]any{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":{"message":"encode response","type":"server_error","param":null,"code":null}}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
