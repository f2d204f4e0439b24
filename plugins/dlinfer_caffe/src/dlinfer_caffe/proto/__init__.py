"""Caffe's file format as protobuf messages (NetParameter, LayerParameter, BlobProto, ...).

``caffe_pb2.py`` and its type stub ``caffe_pb2.pyi`` are generated from
``caffe.proto`` beside them and committed, so installing the plugin needs no
protobuf compiler. After editing the schema, regenerate both from
``plugins/dlinfer_caffe`` with ``make proto``, which runs::

    cd src && python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. dlinfer_caffe/proto/caffe.proto

The generated module checks at import that the protobuf runtime is at least
the version of the compiler that made it (6.33.5), hence the plugin's
``protobuf`` requirement.
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
