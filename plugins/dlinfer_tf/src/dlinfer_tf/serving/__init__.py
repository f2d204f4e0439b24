"""TF-Serving compatible frontend: REST ``/v1/models/...`` and gRPC
``tensorflow.serving.PredictionService``/``ModelService``, served through the
same model repository, scheduler and limits as the V2 protocol."""
