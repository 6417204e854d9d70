module mizzen.dev/brigadier

go 1.24
