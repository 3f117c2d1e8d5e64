package services

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// BearerOK reports whether an Authorization value is "Bearer KEY" for key. The keys are compared
// in constant time (as SHA-256 digests, so that neither their contents nor their lengths leak
// through timing).
func BearerOK(authorization, key string) bool {
	token, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok {
		return false
	}
	a, b := sha256.Sum256([]byte(strings.TrimSpace(token))), sha256.Sum256([]byte(key))
	return subtle.ConstantTimeCompare(a[:], b[:]) == 1
}

// APIKeyStreamInterceptor requires metadata "authorization: Bearer KEY" on the streaming methods
// named (full method names, e.g. "/dlmesh.v1.Gateway/Generate"); others (health) pass. A missing
// or wrong key gets Unauthenticated.
func APIKeyStreamInterceptor(key string, methods ...string) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !containsMethod(methods, info.FullMethod) || keyOK(ss.Context(), key) {
			return handler(srv, ss)
		}
		return status.Error(codes.Unauthenticated, "missing or incorrect API key: send metadata authorization: Bearer KEY")
	}
}

func containsMethod(methods []string, m string) bool {
	for _, x := range methods {
		if x == m {
			return true
		}
	}
	return false
}

func keyOK(ctx context.Context, key string) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if BearerOK(v, key) {
			return true
		}
	}
	return false
}
