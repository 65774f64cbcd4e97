//! Result URLs that download: each URL in a result item (`imageURL`,
//! `maskImageURL`, `guideImageURL`, `videoURL`, `audioURL`, a 3D object's
//! files) points at the simulator itself, and a `GET` of it returns the
//! media the task made: the picture for images, a small valid file of the
//! right type for the others.
//!
//! What is kept is how to make each file again (a picture's seed, size and
//! format), not its bytes: a few dozen bytes a file, at most
//! [`MAX_DOWNLOADS`] of them, each for [`DOWNLOAD_TTL`], oldest gone first.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::media;
use super::picture::{self, Format};

/// Most result files kept downloadable at once.
pub const MAX_DOWNLOADS: usize = 50_000;

/// How long a result's URL downloads after the result was made (Runware
/// keeps results for a task's `ttl`; the simulator, an hour).
pub const DOWNLOAD_TTL: Duration = Duration::from_secs(3600);

/// How to make one result file again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Recipe {
    /// A picture: the seed, size, format and quality of its result.
    Picture {
        seed: u64,
        width: u32,
        height: u32,
        format: Format,
        quality: u8,
    },
    /// A sound, WAV or MP3.
    Audio { wav: bool },
    /// A video.
    Video,
    /// A 3D object.
    Object3d,
    /// An SVG.
    Svg,
}

impl Recipe {
    /// The file, and its media type.
    pub fn make(self) -> (Vec<u8>, &'static str) {
        match self {
            Recipe::Picture {
                seed,
                width,
                height,
                format,
                quality,
            } => (
                picture::encode(seed, width, height, format, quality),
                format.mime(),
            ),
            Recipe::Audio { wav: true } => (media::silent_audio(true), "audio/wav"),
            Recipe::Audio { wav: false } => (media::silent_audio(false), "audio/mpeg"),
            Recipe::Video => (media::empty_mp4(), "video/mp4"),
            Recipe::Object3d => (media::empty_glb(), "model/gltf-binary"),
            Recipe::Svg => (media::square_svg(), "image/svg+xml"),
        }
    }
}

/// The files that download, by their name (`UUID.ext`), within
/// [`MAX_DOWNLOADS`] and [`DOWNLOAD_TTL`].
#[derive(Debug, Default)]
pub struct Downloads {
    files: HashMap<String, (Recipe, Instant)>,
    order: VecDeque<String>,
}

impl Downloads {
    /// Keeps `name` downloadable as `recipe` makes it.
    pub fn keep(&mut self, name: String, recipe: Recipe, now: Instant) {
        self.expire(now);
        while self.files.len() >= MAX_DOWNLOADS {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.files.remove(&oldest);
        }
        if self.files.insert(name.clone(), (recipe, now)).is_none() {
            self.order.push_back(name);
        }
    }

    /// The recipe of `name`, if it still downloads.
    pub fn get(&mut self, name: &str, now: Instant) -> Option<Recipe> {
        self.expire(now);
        self.files.get(name).map(|(r, _)| *r)
    }

    /// Files kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether none is kept.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            match self.files.get(oldest) {
                Some((_, at)) if now.duration_since(*at) < DOWNLOAD_TTL => break,
                _ => {
                    let oldest = self.order.pop_front().unwrap_or_default();
                    self.files.remove(&oldest);
                }
            }
        }
    }
}

/// Points each URL of `item` at `base` (the simulator's `http://ADDR/media`)
/// and returns the files to keep: `picture` is how the item's picture was
/// made, when it has one.
pub fn link(item: &mut Value, base: &str, picture: Option<Recipe>) -> Vec<(String, Recipe)> {
    let mut kept = Vec::new();
    let Some(fields) = item.as_object_mut() else {
        return kept;
    };
    for field in [
        "imageURL",
        "maskImageURL",
        "guideImageURL",
        "videoURL",
        "audioURL",
    ] {
        if let Some(url) = fields.get_mut(field) {
            relink(url, base, picture, &mut kept);
        }
    }
    if let Some(files) = fields
        .get_mut("outputs")
        .and_then(|o| o.get_mut("files"))
        .and_then(Value::as_array_mut)
    {
        for file in files {
            if let Some(url) = file.get_mut("url") {
                relink(url, base, picture, &mut kept);
            }
        }
    }
    kept
}

fn relink(url: &mut Value, base: &str, picture: Option<Recipe>, kept: &mut Vec<(String, Recipe)>) {
    let Some(name) = url
        .as_str()
        .and_then(|u| u.rsplit('/').next())
        .map(str::to_owned)
    else {
        return;
    };
    let extension = name.rsplit('.').next().unwrap_or("");
    let recipe = match extension {
        "svg" => Recipe::Svg,
        "mp4" => Recipe::Video,
        "glb" => Recipe::Object3d,
        "wav" => Recipe::Audio { wav: true },
        "mp3" => Recipe::Audio { wav: false },
        _ => match picture {
            Some(p) => p,
            None => return,
        },
    };
    *url = Value::String(format!("{base}/{name}"));
    kept.push((name, recipe));
}

/// How an image result's picture is made: as [`super::results`] makes it
/// for base64 answers.
pub fn picture_of(task: &Map<String, Value>, seed: u64) -> Recipe {
    let (width, height) = super::results::image_size(task);
    Recipe::Picture {
        seed,
        width,
        height,
        format: Format::from_output_format(task.get("outputFormat").and_then(Value::as_str))
            .unwrap_or(Format::Jpg),
        quality: task
            .get("outputQuality")
            .and_then(Value::as_u64)
            .map_or(95, |q| q.clamp(20, 99) as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls_point_at_the_simulator_and_their_files_are_kept_within_bounds() {
        let mut item = json!({"imageURL": "https://im.runware.ai/image/ws/0.5/ii/abc.png",
            "outputs": {"files": [{"url": "https://om.runware.ai/3d/x.glb"}]}, "text": "t"});
        let picture = Recipe::Picture {
            seed: 1,
            width: 64,
            height: 64,
            format: Format::Png,
            quality: 90,
        };
        let kept = link(&mut item, "http://127.0.0.1:9/media", Some(picture));
        assert_eq!(item["imageURL"], "http://127.0.0.1:9/media/abc.png");
        assert_eq!(
            item["outputs"]["files"][0]["url"],
            "http://127.0.0.1:9/media/x.glb"
        );
        assert_eq!(
            kept,
            [
                ("abc.png".into(), picture),
                ("x.glb".into(), Recipe::Object3d)
            ]
        );
        let (png, mime) = picture.make();
        assert_eq!(mime, "image/png");
        assert_eq!(image::load_from_memory(&png).unwrap().width(), 64);

        let mut d = Downloads::default();
        let now = Instant::now();
        for i in 0..MAX_DOWNLOADS + 5 {
            d.keep(format!("{i}.mp4"), Recipe::Video, now);
        }
        assert_eq!(d.len(), MAX_DOWNLOADS);
        assert_eq!(d.get("0.mp4", now), None, "the oldest went first");
        assert_eq!(d.get("5.mp4", now), Some(Recipe::Video));
        assert_eq!(d.get("5.mp4", now + DOWNLOAD_TTL), None);
        assert!(d.is_empty());
    }
}
