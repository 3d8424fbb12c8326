"""A gRPC client from PyPI against a coordinator's admin port, knowing nothing of
Mirador's protos: it lists the services through reflection v1alpha (what
grpcio-reflection speaks), builds the Admin service's messages from the descriptors
reflection returns, calls ClusterStatus, asks the same of reflection v1, and checks
health. Prints one JSON object.

    python reflection.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

ADMIN = "mirador.admin.v1.Admin"


def v1_services(channel):
    """The services listed by grpc.reflection.v1, whose messages are v1alpha's."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for response in call(iter([request]), timeout=5):
        return sorted(s.name for s in response.list_services_response.service)
    return []


def main(address):
    channel = grpc.insecure_channel(address)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = descriptor_pool.DescriptorPool(database)
    method = pool.FindServiceByName(ADMIN).FindMethodByName("ClusterStatus")
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    cluster_status = channel.unary_unary(
        f"/{ADMIN}/ClusterStatus",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    status = cluster_status(request_type(), timeout=5)
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=ADMIN), timeout=5
    )
    print(
        json.dumps(
            {
                "v1alpha_services": sorted(database.get_services()),
                "v1_services": v1_services(channel),
                "cluster_status": json_format.MessageToDict(
                    status, preserving_proto_field_name=True
                ),
                "health": health_pb2.HealthCheckResponse.ServingStatus.Name(
                    health.status
                ),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
