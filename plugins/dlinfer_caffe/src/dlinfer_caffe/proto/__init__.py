"""Caffe's file format as protobuf messages (NetParameter, LayerParameter, BlobProto, ...).

``caffe_pb2.py`` is generated from ``caffe.proto`` beside it and committed, so
installing the plugin needs no protobuf compiler. After editing the schema,
regenerate it from ``plugins/dlinfer_caffe`` with ``make proto``, which runs::

    cd src && python -m grpc_tools.protoc -I. --python_out=. dlinfer_caffe/proto/caffe.proto

The generated module checks at import that the protobuf runtime is at least
the version of the compiler that made it (6.33.5), hence the plugin's
``protobuf`` requirement.
"""

from . import caffe_pb2

__all__ = ["caffe_pb2"]
