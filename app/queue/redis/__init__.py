"""The Redis backend: API nodes put jobs on a Redis Stream (``queue``), workers pull them (``worker``);
both read and write job records through ``records``; ``keys`` says where everything lives."""
