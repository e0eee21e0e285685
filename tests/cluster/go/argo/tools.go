//go:build tools

// Package tools pins the Argo Workflows programs tests/cluster builds: the workflow controller
// and the argo CLI (which also runs `argo server`).
package tools

import (
	_ "github.com/argoproj/argo-workflows/v4/cmd/argo"
	_ "github.com/argoproj/argo-workflows/v4/cmd/workflow-controller"
)
