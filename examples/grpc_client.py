import os

import grpc
from google.protobuf.struct_pb2 import Value

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc

target = os.environ.get("GATEWAY_GRPC_TARGET", "127.0.0.1:50051")
auth = [("authorization", f"Bearer {os.environ['GATEWAY_API_KEY']}")]
with grpc.insecure_channel(target) as channel:
    question = chat_pb2.ChatMessage(role="user", content=Value(string_value="Say hello."))
    params = chat_pb2.ChatCompletionParams(model="gpt-4o", messages=[question])
    request = chat_pb2.CreateChatCompletionRequest(params=params)
    reply = chat_pb2_grpc.ChatServiceStub(channel).CreateChatCompletion(request, metadata=auth)
    print(reply.choices[0].message.content.string_value)
