// The benchmarks' floor for any admission webhook: see main.go. Standard library only.
module podlock.test/nullhook

go 1.26.0
