/* Fixed test keys for the fuzz targets that need signatures which do not
 * change from run to run: fuzz_trust (a trust store the fuzzer can reach
 * by mutating these public keys) and fuzz_index (kits packed at start-up
 * whose cached indexes, the seeds, must match byte for byte: Ed25519
 * signatures are deterministic).  Throwaway keys, generated for this
 * purpose with stellakit keygen / openssl genpkey; they sign nothing else. */
#pragma once

static const char fuzzkey_ed25519_key[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MC4CAQAwBQYDK2VwBCIEIKMgwMpH9z95pU4hjeNlGGy4FNsbz9WT2U9Ec6yyG50N\n"
	"-----END PRIVATE KEY-----\n";
static const char fuzzkey_ed25519_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MCowBQYDK2VwAyEA52h0RfMApsE+asS+Fz5lGhZmE3yxBHsf0S0JHggbFMk=\n"
	"-----END PUBLIC KEY-----\n";
static const char fuzzkey_ec_key[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgS5K7sVZrPr81T+xz\n"
	"S42/2P/S9sKq3Zay8s1hUX40692hRANCAARbC5slhGbcA5s95O8VbgLa//rESSYC\n"
	"yUBNOPS6Kr+Nomq/JzQPMLdstCN0mNGNeNMNEr5Omt2Ko++JhJ8zUoMe\n"
	"-----END PRIVATE KEY-----\n";
static const char fuzzkey_ec_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWwubJYRm3AObPeTvFW4C2v/6xEkm\n"
	"AslATTj0uiq/jaJqvyc0DzC3bLQjdJjRjXjTDRK+TprdiqPviYSfM1KDHg==\n"
	"-----END PUBLIC KEY-----\n";
static const char fuzzkey_rsa_key[] =
	"-----BEGIN PRIVATE KEY-----\n"
	"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCOdR1lb375Of0s\n"
	"nzDBNVB7YIYpD+O2ylGN5uVkQ6mgx8+aP5o8rbZivY6jaEqNNDTzzy9Nj24+AEGB\n"
	"QEsSJoivlNf4vXgSvf0zFhAcodNPgngTXr01YSMafXMa+rJHi8b1GsCVR4rHxMXS\n"
	"Gkz1vf3AQGUqUD5HAdGUt2jNGJHwMT8fp4QZC+iS5QlK57Km4MJXjYbfFPpSD/f1\n"
	"BvXTtQEOUyF35j6ALdcZrcFn39dGzNlFYjoRKkzs6rdmDr4kqLHii53Qh+VS0DX0\n"
	"1fnJ9E9WBnf0RA7xLIlkRaTlzQDmai0luaz1x0dbOJ3SANKnDEktkVxj6XcZf5nc\n"
	"+cvmq5YHAgMBAAECggEABNOiAdhTwIT+936TS9CPIAcGtKh1qjFTrw+mMQ371tc+\n"
	"SPcjti+akODkTtQPRpaAvswDych0z0P59DOl94D3u5867BIbWeM3C36RYC75dmWw\n"
	"xNM+bOsUIecjOcRJuxPY02ArK0Onx5n6q+I5PlBIIzXrV5ItcgF1ROkr81sEQtOT\n"
	"Yb3sctEIJvAY4clGecDQmyLlGKoKe/PdEpEQuyAxaAUKrITQasY+TGNKqOwe0zxB\n"
	"KxkNeoCjJLrWB/24+LunVlW7fkEhTUUjpeQE6+rcO9jAka/pWFBRU5AgWWNNQgJS\n"
	"fkpIHuQ6LgcbtArBKve6+4KK3wvRIAtFe5/4aXju7QKBgQDFcmqrCmOppDqbkbUf\n"
	"x6W9zFE/jjmmhLvRz8S6k1bvOFLmjR9dAEzGQunq1rGRR4uriiXY8MUCCIgU0Uv2\n"
	"42tYaF5seAdMuQJZStcpvzWs6BekPv48bE/Rm9oyHhITnF49itjjrAwV8SlelS1T\n"
	"DZURRasgU/dOFH9IC4bivLGE4wKBgQC4tA/rtNlc2nYbpp4qiCdRyxsMZWuJhxPQ\n"
	"jR5XlzBpUOfEOECxAplKLiTZQHIme2l7vdyuMO0k62uY+W/U+rnL2HmmQCl9DuMk\n"
	"bZ9CapNErOHsnhoQ+teSRRxP9g8hBLDbapkHaLQ1tU9vwdE54aYIFzkGrFByeZIZ\n"
	"kaRAGUcXjQKBgGSDub+2+0N6Iofd5ln2Ve7IW7hCHCEkQ0UtQxZEOaZwgutxfjzn\n"
	"ES6BE/oEL8Moq/a4zkmhUHmXhEcswUI/Rf9sql0HwZeSO5rfWaeb+qQ6RwbLNrvl\n"
	"28B2Wd7XphYrrWIhFAbbKA/nhErtIHS+Xlu7nsFHXYd3MdCoZZN5wdlHAoGAc2jf\n"
	"gdJQ9znyDrj/n2fP2cXlMsu0dAyZDvj+epCXyVaqWusjUPdkvPs0PyOLsAvxD0bF\n"
	"O3qK00TeyIkjnZrEuWCcMoto4SGKQFrW5nMdbg3wZR8s/mseg+D3HeeL8H+z2oYy\n"
	"9HQyFlUiO5yJlXcvfWK1WTwWUFEyPxPH491nlIkCgYEAkRQr+lU8pzmyan8Rx+KC\n"
	"HOwfwx1oFhuLU4nA3AXl23ZEFnV57FJuvRWH3pvRNePGf3/TuUM/SiITdBY/jCDn\n"
	"H0bOxLUPy1F4A8r7ExHVjFOtVgLLsje81uOcvbFQCEn6Qsa8M8ds7yd6ZgjzYzc6\n"
	"Ug7D7y4UJwRr/1RG0DeZQMc=\n"
	"-----END PRIVATE KEY-----\n";
static const char fuzzkey_rsa_pub[] =
	"-----BEGIN PUBLIC KEY-----\n"
	"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAjnUdZW9++Tn9LJ8wwTVQ\n"
	"e2CGKQ/jtspRjeblZEOpoMfPmj+aPK22Yr2Oo2hKjTQ0888vTY9uPgBBgUBLEiaI\n"
	"r5TX+L14Er39MxYQHKHTT4J4E169NWEjGn1zGvqyR4vG9RrAlUeKx8TF0hpM9b39\n"
	"wEBlKlA+RwHRlLdozRiR8DE/H6eEGQvokuUJSueypuDCV42G3xT6Ug/39Qb107UB\n"
	"DlMhd+Y+gC3XGa3BZ9/XRszZRWI6ESpM7Oq3Zg6+JKix4oud0IflUtA19NX5yfRP\n"
	"VgZ39EQO8SyJZEWk5c0A5motJbms9cdHWzid0gDSpwxJLZFcY+l3GX+Z3PnL5quW\n"
	"BwIDAQAB\n"
	"-----END PUBLIC KEY-----\n";
