"""A stand-in for journald's native socket, for tests/tests/logs.rs: binds a datagram socket at
PATH, decodes each entry of the native protocol (KEY=value lines, or KEY, a 64-bit
little-endian length and the raw value for values with line breaks) and appends it to OUT as one
JSON object per line. Prints `ready` once bound; ends when its parent (the agent, which it was
started before) is gone."""
import json
import os
import socket
import struct
import sys


def decode(data):
    fields = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            k, v = line.split(b"=", 1)
            i = nl + 1
        else:
            k = line
            (n,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            v = data[nl + 9 : nl + 9 + n]
            i = nl + 9 + n + 1
        fields[k.decode()] = v.decode("utf-8", "replace")
    return fields


def main():
    path, out = sys.argv[1], sys.argv[2]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    parent = os.getppid()
    print("ready", flush=True)
    with open(out, "a") as f:
        while os.getppid() == parent:
            try:
                data = s.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                continue
            f.write(json.dumps(decode(data)) + "\n")
            f.flush()


if __name__ == "__main__":
    main()
