"""A chat completion on its way through: the request read and checked, admitted and
accounted, streamed or answered, its tokens metered."""
