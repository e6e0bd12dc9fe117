"""A request of any OpenAI route on its way through: read and checked, admitted and accounted,
sent upstream, its answer whole, streamed or passed through, its usage metered."""
