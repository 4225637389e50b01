"""Lowerings of the recurrent ops (LSTM, GRU, RNN) into their cell equations over a static sequence."""
