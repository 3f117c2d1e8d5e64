// Package deploy holds no runtime code: its tests validate the deployment files beside it
// (Dockerfile, compose.yaml, k8s/, prometheus/, grafana/) against the real schemas, with no
// Docker engine or cluster. It is a nested module so that its schema libraries stay out of
// the main module's dependency graph.
package deploy
