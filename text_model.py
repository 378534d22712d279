"""Text encoder of TIRG (Vo et al., CVPR 2019): a word vocabulary and a one-layer LSTM."""
import string

import torch
from torch import nn

UNKNOWN_ID = 0
_STRIP_PUNCTUATION = str.maketrans('', '', string.punctuation)


def tokenize(text):
    """Lower-case, ASCII only, punctuation stripped, split on white space."""
    text = text.encode('ascii', 'ignore').decode('ascii')
    return text.lower().translate(_STRIP_PUNCTUATION).split()


class SimpleVocab:
    """Word <-> id map; id 0 is the unknown word. Stored in checkpoints as `words`, a list
    whose position i holds the word of id i."""

    def __init__(self, words=('<UNK>',)):
        self.words = list(words)
        self.word2id = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_texts(cls, texts):
        """Vocabulary of every word in `texts`, ids in sorted word order."""
        return cls(['<UNK>'] + sorted({w for t in texts for w in tokenize(t)}))

    def encode_text(self, text):
        """Word ids of a text; an empty text is one unknown token."""
        return [self.word2id.get(w, UNKNOWN_ID) for w in tokenize(text)] or [UNKNOWN_ID]

    def get_size(self):
        return len(self.words)


class TextLSTMModel(nn.Module):
    """Texts -> (B, text_embed_dim): word embedding, LSTM, output at each text's last real
    token, Dropout(0.1), Linear."""

    def __init__(self, vocab_words, word_embed_dim=512, lstm_hidden_dim=512,
                 text_embed_dim=512):
        super().__init__()
        self.vocab = SimpleVocab(vocab_words)
        self.embedding_layer = nn.Embedding(self.vocab.get_size(), word_embed_dim)
        self.lstm = nn.LSTM(word_embed_dim, lstm_hidden_dim)
        self.fc_output = nn.Sequential(nn.Dropout(p=0.1),
                                       nn.Linear(lstm_hidden_dim, text_embed_dim))

    def forward(self, texts):
        """texts: list of B strings -> (B, text_embed_dim) on the module's device."""
        ids = [torch.tensor(self.vocab.encode_text(t)) for t in texts]
        lengths = torch.tensor([len(i) for i in ids])
        device = self.embedding_layer.weight.device
        padded = nn.utils.rnn.pad_sequence(ids).to(device)  # (T, B)
        packed = nn.utils.rnn.pack_padded_sequence(self.embedding_layer(padded), lengths,
                                                   enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: (1, B, hidden) = output at the last token
        return self.fc_output(h_n[0])
