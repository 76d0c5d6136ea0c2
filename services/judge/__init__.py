"""JudgeService: the model's understanding as a judge, served by Triton (pytriton) behind a gRPC front."""
