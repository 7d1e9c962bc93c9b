"""The runtime of each model family (see ``app.store.families``): how it loads its components, encodes its
conditioning, runs its network on a batch of rows and decodes a finished row. The engine, the scheduler and
the samplers are the same for every family."""
