"""grpc.health.v1 Check over TLS, for Kubernetes exec probes: exit 0 when SERVING, 1 otherwise.

The kubelet's native gRPC probe speaks plaintext only; with TLS on, the chart's probes run
`python grpc_health_probe.py 127.0.0.1:PORT --server-name NAME --ca CA.pem [--service NAME]`.
Health is served without the bearer token, so none is sent.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("--server-name", required=True, help="name the server's certificate must carry")
    parser.add_argument("--ca", required=True, help="PEM file of the CA that signed the server's certificate")
    parser.add_argument("--service", default="", help="service to check ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    except OSError as e:
        print(f"probe: cannot read --ca {args.ca}: {e.strerror}", file=sys.stderr)
        return 1
    options = [("grpc.ssl_target_name_override", args.server_name), ("grpc.default_authority", args.server_name)]
    with grpc.secure_channel(args.address, creds, options=options) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            print(f"probe: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"probe: {args.service or 'server'} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
