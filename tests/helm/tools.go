//go:build tools

// The helm command the deploy tests run (`helm lint`, `helm template`); imported so that
// 'go mod tidy' keeps what it needs. Built by 'make helm-deps'.
package tools

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
