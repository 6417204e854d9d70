module mizzen.dev/bench-no-op

go 1.24

require mizzen.dev/brigadier v0.0.0

replace mizzen.dev/brigadier => ../../../../../guest-sdk/go
