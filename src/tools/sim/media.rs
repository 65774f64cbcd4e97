//! Small valid files of each media type the simulator makes besides
//! pictures: what a client that downloads its results reads, the right
//! type by its first bytes and its structure, as short as they can be.

/// A short silent sound: a WAV (PCM, 8 kHz mono, 8 bits, a tenth of a
/// second) or MP3 (a few silent MPEG-1 Layer III frames).
pub fn silent_audio(wav: bool) -> Vec<u8> {
    if wav {
        let samples = 800u32;
        let mut out = Vec::with_capacity(44 + samples as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + samples).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&8000u32.to_le_bytes());
        out.extend_from_slice(&8000u32.to_le_bytes()); // bytes a second
        out.extend_from_slice(&1u16.to_le_bytes()); // block align
        out.extend_from_slice(&8u16.to_le_bytes()); // bits a sample
        out.extend_from_slice(b"data");
        out.extend_from_slice(&samples.to_le_bytes());
        out.resize(out.len() + samples as usize, 0x80);
        out
    } else {
        // MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no CRC, no padding:
        // 144 * 128000 / 44100 = 417 bytes a frame; zero side information
        // and data decode as silence.
        let mut out = Vec::with_capacity(417 * 4);
        for _ in 0..4 {
            let start = out.len();
            out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
            out.resize(start + 417, 0);
        }
        out
    }
}

/// A video file of no frames: an MP4 (ISO base media) with its `ftyp` and a
/// `moov` holding the movie header, as players and `file` recognise one.
pub fn empty_mp4() -> Vec<u8> {
    let mut ftyp = Vec::new();
    ftyp.extend_from_slice(b"isom");
    ftyp.extend_from_slice(&0x200u32.to_be_bytes());
    ftyp.extend_from_slice(b"isomiso2mp41");
    let mut mvhd = vec![0u8; 4]; // version 0, no flags
    mvhd.extend_from_slice(&[0; 8]); // creation, modification
    mvhd.extend_from_slice(&1000u32.to_be_bytes()); // timescale
    mvhd.extend_from_slice(&0u32.to_be_bytes()); // duration
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate 1.0
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes()); // volume 1.0
    mvhd.extend_from_slice(&[0; 10]);
    for m in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        mvhd.extend_from_slice(&m.to_be_bytes());
    }
    mvhd.extend_from_slice(&[0; 24]); // pre-defined
    mvhd.extend_from_slice(&1u32.to_be_bytes()); // next track id
    let moov = boxed(b"mvhd", &mvhd);
    let mut out = boxed(b"ftyp", &ftyp);
    out.extend_from_slice(&boxed(b"moov", &moov));
    out
}

/// A 3D object of no meshes: a binary glTF (GLB) with its JSON chunk.
pub fn empty_glb() -> Vec<u8> {
    let mut json = br#"{"asset":{"version":"2.0","generator":"runwared sim"},"scenes":[{"nodes":[]}],"scene":0}"#.to_vec();
    while json.len() % 4 != 0 {
        json.push(b' ');
    }
    let total = 12 + 8 + json.len() as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&json);
    out
}

/// An SVG of one square.
pub fn square_svg() -> Vec<u8> {
    br##"<svg xmlns="http://www.w3.org/2000/svg" width="512" height="512" viewBox="0 0 512 512"><rect width="512" height="512" fill="#4a7bd0"/></svg>"##.to_vec()
}

/// An ISO box: its size, its type, its content.
fn boxed(kind: &[u8; 4], content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + content.len());
    out.extend_from_slice(&(8 + content.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_is_of_its_type() {
        let wav = silent_audio(true);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(&wav[8..12], b"WAVE");
        let riff_len = u32::from_le_bytes(wav[4..8].try_into().unwrap()) as usize;
        assert_eq!(riff_len + 8, wav.len());
        let mp3 = silent_audio(false);
        assert_eq!((mp3[0], mp3[1] & 0xE0), (0xFF, 0xE0), "an MPEG frame sync");
        let mp4 = empty_mp4();
        assert_eq!(&mp4[4..8], b"ftyp");
        let ftyp_len = u32::from_be_bytes(mp4[..4].try_into().unwrap()) as usize;
        assert_eq!(&mp4[ftyp_len + 4..ftyp_len + 8], b"moov");
        let moov_len = u32::from_be_bytes(mp4[ftyp_len..ftyp_len + 4].try_into().unwrap());
        assert_eq!(ftyp_len + moov_len as usize, mp4.len());
        let glb = empty_glb();
        assert_eq!(&glb[..4], b"glTF");
        assert_eq!(
            u32::from_le_bytes(glb[8..12].try_into().unwrap()) as usize,
            glb.len()
        );
        let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
        let json: serde_json::Value = serde_json::from_slice(&glb[20..20 + json_len]).unwrap();
        assert_eq!(json["asset"]["version"], "2.0");
        assert!(square_svg().starts_with(b"<svg"));
    }
}
