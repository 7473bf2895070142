"""A standard gRPC client (Python grpcio: BoringSSL, HTTP/2) against the hub's TLS port.

Proves what browsers and common gRPC tooling need: the hub's certificate chain is one
they accept (ECDSA P-256), verified against the CA file only. No generated stubs: the
two-string LoginRequest is encoded by hand and LoginResponse decoded minimally.

usage: grpc_client.py --target 127.0.0.1:PORT --ca ca.pem --user U --password P
Exit 0 when a wrong password gets the gRPC status UNAUTHENTICATED (TLS, HTTP/2 and gRPC
all worked) and the right one returns a token.
"""

import argparse
import sys

import grpc

LOGIN = "/pleura.v1.Hub/Login"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string_field(number, value):
    data = value.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def login_request(user, password):
    return string_field(1, user) + string_field(2, password)


def string_fields(buf):
    """{field number: str} of the length-delimited fields of a protobuf message."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            fields[number] = buf[i : i + n].decode()
            i += n
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    a = ap.parse_args()

    with open(a.ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    with grpc.secure_channel(a.target, creds) as channel:
        login = channel.unary_unary(
            LOGIN, request_serializer=None, response_deserializer=None
        )
        ok = True
        try:
            login(login_request(a.user, a.password + " wrong"), timeout=20)
            print("wrong password: accepted (expected UNAUTHENTICATED)")
            ok = False
        except grpc.RpcError as e:
            print(f"wrong password: {e.code().name}: {e.details()}")
            ok &= e.code() == grpc.StatusCode.UNAUTHENTICATED

        try:
            resp = login(login_request(a.user, a.password), timeout=20)
            f = string_fields(resp)
            token = f.get(1, "")
            print(f"login: token of {len(token)} characters, role {f.get(3, '?')}")
            ok &= len(token) > 0
        except grpc.RpcError as e:
            print(f"login: {e.code().name}: {e.details()}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
