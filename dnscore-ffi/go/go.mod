module github.com/dnscore/dnscore-ffi/go

go 1.19
