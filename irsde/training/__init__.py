"""Stage 2: the restorer's losses and its training stage (``IRStage``) on the shared run lifecycle."""
