"""Residual k-means quantiser: k-means finds separated clusters, each level lowers the error, codes
are the nearest codewords, prefixes decode, dropout masks levels, encoding does not depend on the
call's size."""
import torch

from omni.nn.rvq import ResidualVQ, kmeans


def test_kmeans_finds_well_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None] + 0.1 * torch.randn(4, 50, 2, generator=g)).reshape(-1, 2)
    found = kmeans(x, 4, iters=10, generator=torch.Generator().manual_seed(1))
    # every true centre has a centroid within 0.1 (a dead centroid would have been moved onto the worst point)
    assert torch.cdist(centres, found).min(1).values.max() < 0.1


def test_levels_lower_the_error_and_codes_are_nearest_codewords():
    torch.manual_seed(0)
    x = torch.randn(2000, 8) * torch.linspace(2, 0.2, 8)
    rvq = ResidualVQ(8, num_codebooks=3, codebook_size=16)
    errors = rvq.fit(x, iters=8, progress=False)
    assert errors[0] > errors[1] > errors[2] and errors[0] < x.pow(2).mean()
    z = x[:64].T[None]  # [1, 8, 64]
    codes = rvq.encode(z)
    first = torch.cdist(x[:64], rvq.codebooks[0]).argmin(1)
    assert torch.equal(codes[0, 0], first)
    prefix_errors = [(rvq.decode(codes[:, :k]) - z).pow(2).mean().item() for k in (1, 2, 3)]
    assert prefix_errors[0] > prefix_errors[1] > prefix_errors[2]


def test_forward_masks_levels_beyond_n_q_and_encoding_is_size_independent():
    torch.manual_seed(0)
    rvq = ResidualVQ(6, num_codebooks=4, codebook_size=8)
    z = torch.randn(3, 6, 10)
    q, codes = rvq(z, torch.tensor([1, 2, 4]))
    assert torch.equal(codes, rvq.encode(z))
    for b, k in enumerate((1, 2, 4)):
        torch.testing.assert_close(q[b], rvq.decode(codes[b:b + 1, :k])[0])
    one_by_one = torch.cat([rvq.encode(z[:, :, t:t + 1]) for t in range(10)], 2)
    assert torch.equal(one_by_one, codes)
