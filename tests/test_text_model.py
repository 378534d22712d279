"""Vocabulary and LSTM text encoder."""
import torch

from text_model import SimpleVocab, TextLSTMModel, tokenize


def test_tokenize():
    assert tokenize('Make top-left Red café!') == ['make', 'topleft', 'red', 'caf']
    assert tokenize('') == [] and tokenize('  ?! ') == []


def test_vocab_ids_and_unknown():
    vocab = SimpleVocab.from_texts(['add red circle', 'remove Blue circle.'])
    assert vocab.words == ['<UNK>', 'add', 'blue', 'circle', 'red', 'remove']
    assert vocab.encode_text('remove red square') == [5, 4, 0]
    assert vocab.encode_text('') == [0] and vocab.encode_text('!!') == [0]
    assert SimpleVocab(vocab.words).word2id == vocab.word2id  # round trip through a list


def test_lstm_shapes_padding_and_edge_cases():
    torch.manual_seed(0)
    vocab = SimpleVocab.from_texts(['a b c d e f', 'x y'])
    model = TextLSTMModel(vocab.words, word_embed_dim=16, lstm_hidden_dim=8,
                          text_embed_dim=12).eval()
    texts = ['a b c d e f', 'x', '', 'never seen words']
    batch = model(texts)
    assert batch.shape == (4, 12)
    alone = torch.cat([model([t]) for t in texts])
    # the output of a padded batch equals each text encoded alone (last real token)
    assert torch.allclose(batch, alone, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


def test_last_token_output_matches_unpacked_lstm():
    torch.manual_seed(0)
    vocab = SimpleVocab.from_texts(['a b c'])
    model = TextLSTMModel(vocab.words, word_embed_dim=6, lstm_hidden_dim=5,
                          text_embed_dim=5).eval()
    ids = torch.tensor(vocab.encode_text('a b c'))[:, None]
    out, _ = model.lstm(model.embedding_layer(ids))
    assert torch.allclose(model(['a b c']), model.fc_output(out[-1]), atol=1e-6)


def test_gradients_reach_embeddings():
    vocab = SimpleVocab.from_texts(['a b'])
    model = TextLSTMModel(vocab.words, 8, 8, 8)
    model(['a b', '']).sum().backward()
    assert model.embedding_layer.weight.grad.abs().sum() > 0
