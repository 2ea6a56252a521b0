"""Language-model post-training: causal LMs (GPT, Hugging Face), generator runners, reward models, the LM learner base."""
